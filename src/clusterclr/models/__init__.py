"""Networks: backbones that map images to features, heads that map features onwards."""
