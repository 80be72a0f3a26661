"""EAGLE-2 style dynamic trees: the options, the tree a draft grows, and its verification."""
