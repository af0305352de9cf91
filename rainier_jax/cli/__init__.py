"""The `rainier` command line: one module per command. Library code never imports it."""
