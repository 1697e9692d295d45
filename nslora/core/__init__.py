"""The ground floor: what every package may import without importing the orchestrator (router/).

errors.py (UserError), plugins.py (the one resolver of built-in names and `package.module:Name`), options.py
(the config-dataclass helpers every component's config uses).
"""
