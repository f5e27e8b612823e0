"""The control plane: the controller actor, its scheduler, failure policy and job runners."""
