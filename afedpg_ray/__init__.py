"""AFedPG on Ray."""
