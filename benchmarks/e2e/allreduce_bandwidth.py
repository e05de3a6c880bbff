"""All-reduce time and bus bandwidth between the GPUs of this machine (NCCL, one process a GPU), for
gradient-sized fp16 buffers: how long DDP's gradient all-reduce takes where it is not hidden behind the
backward pass.

    python benchmarks/e2e/allreduce_bandwidth.py [--gpus 2] [--sizes-mb 1 25 100]

Bus bandwidth is NCCL's convention: bytes * 2 (n - 1) / n / time (the ring's traffic per GPU).
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, gpus: int, sizes_mb, repeats: int):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=gpus)
    for size_mb in sizes_mb:
        buffer = torch.ones(int(size_mb * 2**20) // 2, dtype=torch.float16, device="cuda")
        for _ in range(3):
            dist.all_reduce(buffer)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(buffer)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
        if rank == 0:
            bus = buffer.numel() * 2 * 2 * (gpus - 1) / gpus / seconds / 1e9
            print(f"all-reduce {size_mb:7.1f} MB fp16: {seconds * 1e3:8.3f} ms  bus bandwidth {bus:7.1f} GB/s",
                  flush=True)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 25, 100])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.gpus < 2 or args.gpus > torch.cuda.device_count():
        raise SystemExit(f"--gpus {args.gpus}: needs 2 to {torch.cuda.device_count()} GPUs (this machine's count)")
    if torch.cuda.can_device_access_peer(0, 1):
        print("GPU 0 can access GPU 1's memory directly (peer to peer)")
    else:
        print("GPU 0 cannot access GPU 1's memory directly: NCCL goes through host memory")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    mp.spawn(worker, args=(args.gpus, args.sizes_mb, args.repeats), nprocs=args.gpus, join=True)


if __name__ == "__main__":
    main()
