"""The five command handlers (meta-train, meta-test, sweep, coord-check, report): each builds the objects its
command needs from the config and calls the paper packages."""
