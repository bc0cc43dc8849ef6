"""The operators' console on the admin listener: its SVG charts (:mod:`.charts`) and the
page's static files (``static/``: ``index.html``, ``console.js``, ``console.css``), served
by the built-in ``console`` plugin (:mod:`plugins.console`)."""
