"""Entry point for `ray job submit ... -- python jobs/world.py --preset demo --out DIR` (same flags as `deepsalt world`)."""

from deepsalt.cli import main

if __name__ == "__main__":
    main(["world", *__import__("sys").argv[1:]])
