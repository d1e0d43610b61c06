"""medsynth: semantic image synthesis for abdominal CT (Zhuang et al.) and its baselines."""

__version__ = "0.1.0"
