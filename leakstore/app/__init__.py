"""The interfaces: the command line (`leakstore.app.cli`) and the Python facade (`Attributor`)."""
