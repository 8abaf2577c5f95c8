"""Launcher of the testbed stand-ins: `python3 -S standin_run.py MODULE ARGS...`
runs MODULE.main() (MODULE in this directory) with sys.argv = [MODULE's path,
*ARGS], exactly as `python3 MODULE.py ARGS...` would, but cheaper per process,
which matters when 50 hosts run the stand-ins on 2 cores:
- MODULE is imported, so its compiled bytecode is cached in __pycache__
  (a script run as __main__ is compiled again on every run);
- with -S, site-packages (and this machine's .pth hooks) are set up only if a
  module is not found without them (yaml, for compose files and mcp-proxy).
This file is kept tiny: it is compiled on every run.
"""
import sys


class _SiteOnDemand:
    """Last on sys.meta_path: a top-level module not found without site-packages
    runs `site` once, then is looked up again."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is not None or cls not in sys.meta_path:
            return None
        sys.meta_path.remove(cls)
        import site
        from importlib.machinery import PathFinder
        site.main()
        return PathFinder.find_spec(name)


if not sys.flags.no_site:
    del _SiteOnDemand
else:
    sys.meta_path.append(_SiteOnDemand)
_mod = __import__(sys.argv[1])
sys.argv = [_mod.__file__, *sys.argv[2:]]
sys.exit(_mod.main())
