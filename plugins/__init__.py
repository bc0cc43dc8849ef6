"""Built-in plugins of stripe-gateway: each module is one ordinary plugin.

They are listed in :data:`gateway.host.DEFAULT_PLUGINS` and can be turned off with
``[plugins] disable = ["name"]``, like any third-party plugin.
"""
