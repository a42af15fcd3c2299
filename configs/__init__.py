"""OmegaConf YAML configs shipped with audiomamba (model presets, data, trainer, experiments).

Installed as the package ``audiomamba.configs`` so presets resolve through ``importlib.resources``.
"""
