"""Run by test_faults_multinode.py under torchrun: `tpgpt train` with rank 1 given extra
arguments (another config, or another data dir), as a misconfigured node would be."""
import os
import sys

from tpgpt.cli import main

if __name__ == "__main__":
    extra = os.environ.get("TPGPT_TEST_RANK1_ARGS", "").split()
    args = sys.argv[1:] + (extra if os.environ.get("RANK") == "1" else [])
    if os.environ.get("RANK") == "1" and os.environ.get("TPGPT_TEST_RANK1_CWD"):
        os.chdir(os.environ["TPGPT_TEST_RANK1_CWD"])  # a relative data_dir: other files
    raise SystemExit(main(args))
