"""FNet quasar-redshift toolkit: a torch-free runtime plus training and export tools."""

__version__ = "0.1.0"
