"""``python -m asn2n_dask``: the ``asn2n`` command line."""

from .cli import app

if __name__ == "__main__":
    app()
