"""Our MONAI Deploy operators, one per file (``<Thing>Operator``), and the result contract the apps share.

The apps in ``apps/`` wire these together; the server (``interop.jobs``) reads what they write through
:mod:`operators.app_result`.
"""
