"""The console's SVG charts: well-formed SVG whatever the series are called, every name
shown as text, nothing active, no inline style (the console's policy allows none)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from gateway.console.charts import line_chart

SVG = "{http://www.w3.org/2000/svg}"
#: what XML 1.0 can carry (the gateway's team names are far narrower)
xml_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    min_size=1,
    max_size=40,
)
points = st.lists(st.none() | st.floats(0, 1e6), min_size=0, max_size=30)


@given(st.dictionaries(xml_text, points, max_size=5), xml_text)
def test_any_names_make_well_formed_inert_svg(
    series: dict[str, list[float | None]], title: str
) -> None:
    svg = line_chart(title, "per second", series, seconds_per_point=5)
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert tags <= {"svg", "text", "line", "polyline", "circle", "rect"}
    for element in root.iter():
        assert not any(name.lower().startswith("on") or "href" in name for name in element.attrib)
        assert "style" not in element.attrib
    legends = [e for e in root.iter(SVG + "text") if e.get("class") == "legend"]
    assert [e.get("data-series") for e in legends] == list(series)
    for legend, name in zip(legends, series, strict=True):
        assert (legend.text or "").startswith(f"{name}: ")
    heading = next(root.iter(SVG + "text"))
    assert heading.text == f"{title} (per second)"


def test_a_polyline_per_run_of_points_and_a_dot_for_a_lone_one() -> None:
    svg = line_chart("t", "ms", {"a": [1.0, 2.0, None, 3.0], "b": []}, seconds_per_point=5)
    root = ET.fromstring(svg)
    runs = [e.get("points", "").count(",") for e in root.iter(SVG + "polyline")]
    assert runs == [2, 1]
    assert len(list(root.iter(SVG + "circle"))) == 1
    legend = [e.text for e in root.iter(SVG + "text") if e.get("class") == "legend"]
    assert legend == ["a: 3", "b: -"]
