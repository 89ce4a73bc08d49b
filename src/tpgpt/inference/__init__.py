"""Generation from a trained model: `tpgpt sample`."""
