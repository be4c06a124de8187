"""Old entry point of the digits training (kept): `python -m usf_fast.models.train_digits` is the new one."""
from .models.train_digits import main, train_features, train_unet  # noqa: F401

if __name__ == "__main__":
    main()
