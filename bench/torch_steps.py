"""What the PyTorch benchmarks share: the device set-up, and the timed loop (warm-up steps, then
timed steps, each one forward under `amp`, backward, clipping at 1.0, an optimizer step,
synchronised on a GPU)."""
import statistics
import time

import torch


def setup_device(device, threads):
    """TF32 on a GPU (as PyTorch users run it), the thread count on the CPU; (is cuda, torch.device)."""
    cuda = device == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(threads)
    return cuda, torch.device(device)


def timed_steps(loss_fn, params, opt, amp, warmup, steps, cuda):
    """Returns (mean s/step, median s/step, warm-up seconds, losses of every step)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times, losses, warm_s = [], [], 0.0
    for s in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with amp:
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if s >= warmup:
            times.append(dt)
        else:
            warm_s += dt
    return sum(times) / len(times), statistics.median(times), warm_s, losses
