"""medzoo's first-party plugins, found through the ``medzoo`` entry-point group like any other."""
