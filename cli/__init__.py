"""The `pretrain` command, at the top of the layering: it imports the flows, nothing imports it."""
