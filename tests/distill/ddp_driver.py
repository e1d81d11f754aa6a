"""Run by tests under torchrun: trains, then saves this rank's weights so the test can compare ranks."""
import os
import sys

import torch

from distill.config import load_config
from distill.train import train

cfg = load_config(sys.argv[1], sys.argv[2:])
res = train(cfg)
torch.save(res["model"].state_dict(), os.path.join(cfg.train.out_dir, f"rank{os.environ.get('RANK', '0')}.pt"))
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
