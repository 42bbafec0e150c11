"""Training, evaluation and publishing for ILM (data -> CF -> phase 1 -> phase 2 -> evaluation)."""
