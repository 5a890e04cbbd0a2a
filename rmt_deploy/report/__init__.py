"""Human-readable outputs: Markdown tables and PNG plots."""

from .spectrum import plot_layer_spectrum, spectrum_markdown, write_spectrum_report

__all__ = ["plot_layer_spectrum", "spectrum_markdown", "write_spectrum_report"]
