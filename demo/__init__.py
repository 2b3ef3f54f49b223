"""A small relying party for `make run`: sign in through the OP and see what comes back."""
