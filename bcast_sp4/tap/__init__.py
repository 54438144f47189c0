"""twistd tap modules: one per tapname (Options + makeService)."""
