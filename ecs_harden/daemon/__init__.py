"""The daemon: reconcile on every observable change, poll what cannot be observed."""
