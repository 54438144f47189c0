"""twistd plugins of bcast-sp4: one ServiceMaker per role (tapnames bcast-ecmg, bcast-scs, ...).

This module holds ServiceMaker objects only; each imports its tap module lazily. The folder is
not a package (no __init__.py), as Twisted's plugin system requires.
"""
