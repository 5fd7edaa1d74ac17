"""PyTorch models: sparse auto-encoders (SAU), teacher and student transformers, losses, the model bundle."""
