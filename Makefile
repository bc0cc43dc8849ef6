.PHONY: test demo lint bench soak
test:
	bash scripts/test.sh
demo:
	bash scripts/demo.sh
lint:
	.venv/bin/ruff check gateway plugins sandbox tests bench && .venv/bin/ruff format --check gateway plugins sandbox tests bench && .venv/bin/mypy
bench:
	.venv/bin/python bench/proxy_bench.py
soak:
	.venv/bin/python bench/soak.py
