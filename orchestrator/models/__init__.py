"""Model and tokenizer construction for each fine-tuning method, plus the built-in tiny base model."""
