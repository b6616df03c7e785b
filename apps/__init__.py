"""MONAI Deploy applications, one package each; run one with ``python -m apps.<name> -i INPUT -o OUTPUT -m MODEL``."""
