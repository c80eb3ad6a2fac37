"""The cost model of upscale estimates (shared.domain.estimate): the fit itself, without a database."""

import random

import pytest

from shared.domain import estimate

SIZES = [512 * 288, 512 * 512, 768 * 432, 768 * 768, 1440 * 1080, 1920 * 1080]
TRUE = (0.2, 3e-8, 2e-7, 4e-16)  # a, b (pixels·frames·steps), d (pixels·frames), c ((pixels·frames)²·steps)


def _seconds(pixels, frames, steps, coefficients=TRUE) -> float:
    return sum(c * t for c, t in zip(coefficients, estimate.terms(pixels, frames, steps)))


def _jobs(count: int, noise: float = 0.0, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(count):
        pixels, frames, steps = rng.choice(SIZES), rng.choice([2, 4, 8]), rng.choice([2, 4, 8, 16])
        jobs.append((pixels, frames, steps, _seconds(pixels, frames, steps) * rng.uniform(1 - noise, 1 + noise)))
    return jobs


def test_the_fit_recovers_known_coefficients():
    fit = estimate.fit_costs(_jobs(40))
    assert fit.coefficients == pytest.approx(TRUE, rel=1e-6)
    assert fit.median_error < 1e-6 and fit.confidence == "high" and not fit.proportional
    assert fit.jobs == 40 and fit.shapes > estimate.MIN_SHAPES
    assert fit.seconds(1920 * 1080, 4, 4) == pytest.approx(_seconds(1920 * 1080, 4, 4), rel=1e-6)


def test_noisy_jobs_give_a_close_fit_and_an_honest_error():
    fit = estimate.fit_costs(_jobs(40, noise=0.1, seed=1))
    assert 0.01 < fit.median_error < 0.1  # about the noise, cross-validated: not the 0 of its own residuals
    assert fit.seconds(1920 * 1080, 4, 4) == pytest.approx(_seconds(1920 * 1080, 4, 4), rel=0.1)


def test_coefficients_are_never_negative():
    # Costs that fall with the work would want a negative slope: the fit keeps the constant alone.
    jobs = [(512 * 288, frames, 2, 10.0 - frames) for frames in range(1, 9)]
    fit = estimate.fit_costs(jobs)
    assert min(fit.coefficients) >= 0 and fit.coefficients[1:] == (0.0, 0.0, 0.0)


def test_too_few_jobs_give_no_fit():
    assert estimate.fit_costs(_jobs(estimate.MIN_JOBS - 1)) is None
    # Jobs that measured nothing do not count.
    assert estimate.fit_costs([(512 * 288, 2, 2, 0.0)] * 10 + [(512 * 288, 2, 2, None)]) is None


def test_one_size_scales_by_pixels_frames_steps():
    jobs = [(512 * 288, 4, 4, seconds) for seconds in (0.48, 0.5, 0.5, 0.52, 0.5)]
    fit = estimate.fit_costs(jobs)
    assert fit.proportional and fit.shapes == 1 and fit.confidence == "medium"  # never high, even if exact
    assert fit.seconds(512 * 288, 4, 4) == pytest.approx(0.5)
    assert fit.seconds(512 * 288 * 2, 4, 8) == pytest.approx(2.0)  # four times the work, four times the seconds
    # ...and only near what it measured.
    assert fit.covers(512 * 288 * estimate.RANGE, 4) and not fit.covers(1920 * 1080, 4)


def test_fewer_shapes_than_terms_scale_by_the_work_too():
    shapes = [(512 * 288, 2, 2), (512 * 512, 2, 2), (768 * 432, 4, 4)]
    fit = estimate.fit_costs([(*shape, _seconds(*shape)) for shape in shapes * 2])
    assert fit.proportional and fit.jobs == 6 and fit.shapes == 3
