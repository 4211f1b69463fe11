"""Bundled YAML configs, ``configs/<kind>/<name>.yaml``: a package so that installs ship them."""
