"""Figures written whole: shared by the analyses and the benchmarks that plot."""
from __future__ import annotations

import os


def save_figure(fig, path: str, overwrite: bool = False, dpi: int = 110) -> None:
    """A matplotlib figure written whole (through a temporary file) and, as
    bench.timing.write_results does, never over a file that appeared since the command checked
    its --out (bench.timing.check_out) unless `overwrite`."""
    import matplotlib.pyplot as plt

    from .errors import ConfigError
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ConfigError(f"{path} appeared while measuring: kept it; rerun with another "
                          f"--out or --overwrite") from None
    finally:
        os.remove(tmp)
