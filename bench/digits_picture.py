"""The README's digits picture (docs/digits_nfe5.png): the embedded digits model at NFE 5 — data, the default preset, the best preset
and the searched schedule, from the same noise, each titled with its Fréchet distance (2,000 samples);
also prints UniPC-3's FD at NFE 20 (`--reference-nfe`), the README's NFE-20 row.

    usf-fast search --model digits --nfe 5 --metric fd --out out/digits_fd      # the searched schedule (517 s, 2 CPUs)
    python bench/digits_picture.py out/digits_fd/best_nfe5.json docs/digits_nfe5.png
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import usf_fast  # noqa: E402
from usf_fast.pictures import image_grid  # noqa: E402
from usf_fast.models.digits import DIGITS_SHAPE, DigitsFrechet, digits_data, digits_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("schedule", help="searched schedule JSON (usf-fast search --model digits ...)")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--samples", type=int, default=2000, help="samples for the Fréchet distance")
    ap.add_argument("--show", type=int, default=36, help="images per panel")
    ap.add_argument("--reference-nfe", type=int, default=20, help="also print UniPC-3's FD at this NFE (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = digits_model()
    ns = model.noise_schedule
    searched = usf_fast.Schedule.from_json(args.schedule)
    nfe = searched.nfe
    panels = [("UniPC-3, logSNR (default)", usf_fast.presets.unipc(ns, nfe, order=3)),
              ("UniPC-3, time-quadratic (best preset)", usf_fast.presets.unipc(ns, nfe, order=3, spacing="time_quadratic")),
              ("S³ searched", searched)]
    noise = torch.randn(args.samples, *DIGITS_SHAPE, generator=torch.Generator().manual_seed(0))
    fd = DigitsFrechet()
    data = digits_data()[0]
    g = torch.Generator().manual_seed(0)
    data_show = data[torch.randperm(len(data), generator=g)[: args.show]]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.6))
    cols = int(args.show ** 0.5)
    axes[0].imshow(image_grid(data_show, cols)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("data", fontsize=9)
    for ax, (title, schedule) in zip(axes[1:], panels):
        with torch.no_grad():
            x = usf_fast.sample(model, schedule, noise=noise)
        dist = fd(x)
        ax.imshow(image_grid(x[: args.show], cols)[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{title}\nNFE {schedule.nfe}, FD {dist:.2f}", fontsize=9)
        print(f"{title}: NFE {schedule.nfe}, FD {dist:.3f}")
    if args.reference_nfe:   # the README's NFE-20 row: printed, not drawn
        for spacing in ("logSNR", "time_quadratic"):
            with torch.no_grad():
                x = usf_fast.sample(model, usf_fast.presets.unipc(ns, args.reference_nfe, order=3, spacing=spacing),
                                    noise=noise)
            print(f"UniPC-3, {spacing} (reference): NFE {args.reference_nfe}, FD {fd(x):.3f}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
