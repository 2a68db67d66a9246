"""`python -m dagir` (and `torchrun ... -m dagir run ...`): the command line."""
from .cli import main

if __name__ == "__main__":
    main()
