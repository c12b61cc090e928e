"""The torch-only core: networks, objectives, the training engine, its runtime and device-resident data.

It imports torch, numpy and tqdm, nothing heavier: it trains on any machine that has torch (a
borrowed GPU box without MLflow, DVC or pydantic included). A test enforces it.
"""
