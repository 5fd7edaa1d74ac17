"""Entry point for `ray job submit ... -- python jobs/train.py --world DIR --out RUN [--preset ...]`.

Thin: the same flags as `deepsalt train`, run inside the Ray job's driver (it joins the cluster via RAY_ADDRESS).
"""

from deepsalt.cli import main

if __name__ == "__main__":
    main(["train", *__import__("sys").argv[1:]])
