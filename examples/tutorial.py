"""The gradtape tutorial in Python, with the gradtape client: TensorFlow's GradientTape
tutorial, the tape held by the server. (examples/tutorial_httpx.py makes the same API calls
by hand, with httpx alone.)

Five parts, each in its own session. Every result is printed as
"<part> <label> = <data> <dtype> <shape>", e.g. "part3 dz/dx = 108 float32 []".

    pip install -e clients/python
    GRADTAPE_URL=http://127.0.0.1:8000 python examples/tutorial.py
"""

import sys
from pathlib import Path
from typing import Any

try:
    import gradtape as gt
except ImportError:  # run from a checkout where the client is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clients" / "python"))
    import gradtape as gt

client = gt.Client()  # GRADTAPE_URL (default http://127.0.0.1:8000), GRADTAPE_API_KEY


def fmt(v: Any) -> str:
    return "[" + ",".join(fmt(x) for x in v) + "]" if isinstance(v, list) else f"{v:g}"


def show(label: str, t: gt.Tensor) -> None:
    value = t.numpy()
    print(f"{label} = {fmt(value.tolist())} {value.dtype.name} {fmt(list(value.shape))}")


def part1() -> None:
    with client.session() as s:
        x = s.constant([[1.0, 1.0], [1.0, 1.0]])
        with s.GradientTape() as t:
            t.watch(x)
            y = gt.reduce_sum(x)
            z = gt.multiply(y, y)
        # Derivative of z with respect to the original input tensor x
        show("part1 dz/dx", t.gradient(z, x))


def part2() -> None:
    with client.session() as s:
        x = s.constant([[1.0, 1.0], [1.0, 1.0]])
        with s.GradientTape() as t:
            t.watch(x)
            y = gt.reduce_sum(x)
            z = gt.multiply(y, y)
        # The gradient with respect to an intermediate value of the recording
        show("part2 dz/dy", t.gradient(z, y))


def part3() -> None:
    # A persistent tape answers more than one gradient call.
    with client.session() as s:
        x = s.constant(3.0)
        with s.GradientTape(persistent=True) as t:
            t.watch(x)
            y = x * x
            z = y * y
        show("part3 dz/dx", t.gradient(z, x))  # 108.0 (4 * x^3 at x = 3)
        show("part3 dy/dx", t.gradient(y, x))  # 6.0
        del t  # drop the reference to the tape


def f(x: gt.Tensor, y: int) -> Any:
    output = 1.0
    for i in range(y):
        if 1 < i < 5:
            output = gt.multiply(output, x)
    return output


def part4(n: int) -> None:
    # Control flow stays in Python: the tape records only the ops that ran.
    with client.session() as s:
        x = s.constant(2.0)
        with s.GradientTape() as t:
            t.watch(x)
            out = f(x, n)
        show(f"part4 n={n} doutput/dx", t.gradient(out, x))


def part5() -> None:
    # Higher order: the inner tape's gradient is computed while the outer tape records.
    with client.session() as s:
        x = s.Variable(1.0)  # trainable variables are watched automatically
        with s.GradientTape() as t:
            with s.GradientTape() as t2:
                y = x * x * x
            dy_dx = t2.gradient(y, x)
        d2y_dx2 = t.gradient(dy_dx, x)
        show("part5 dy/dx", dy_dx)
        show("part5 d2y/dx2", d2y_dx2)


def main() -> None:
    try:
        part1()
        part2()
        part3()
        for n in (6, 5, 4):
            part4(n)
        part5()
    except gt.TransportError as e:
        sys.exit(f"error: {e}")
    except gt.GradtapeError as e:
        sys.exit(f"error: {e}\n{e.problem or ''}")


if __name__ == "__main__":
    main()
