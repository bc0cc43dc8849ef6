"""The operators' console on the admin listener: its SVG charts (:mod:`.charts`), its
session cookie (:mod:`.session`: the page only for a browser that signed in with the admin
token) and the page's static files (``static/``: ``index.html``, ``console.js``,
``console.css``; the sign-in page ``login.html``, ``login.js``, ``login.css``), served by
the built-in ``console`` plugin (:mod:`plugins.console`)."""
