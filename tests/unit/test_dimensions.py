"""The dimension rule (shared.domain.dimensions): examples, parsing, and properties over many boxes."""

from fractions import Fraction
from math import gcd

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.domain.dimensions import MAX_ASPECT_TERM, SIZE_STEP, AspectRatio, generation_size, parse_aspect
from shared.errors import InvalidInput

# The built-in tier boxes (see infra/migrations/0001_create_resolution_tiers.sql).
DRAFT = (512, 512)
PREVIEW = (768, 768)
PRODUCTION = (1920, 1080)

# ---------------------------------------------------------------------------------------------
# Examples


@pytest.mark.parametrize(
    ("aspect", "box", "expected"),
    [
        ("16:9", DRAFT, (512, 288)),
        ("16:9", PREVIEW, (768, 432)),
        ("16:9", PRODUCTION, (1920, 1080)),
        ("9:16", DRAFT, (288, 512)),
        ("1:1", PRODUCTION, (1080, 1080)),
        ("2.39:1", PRODUCTION, (1920, 800)),
        # The most extreme aspect that still fits a draft box: the short side is exactly 8 px.
        ("1:64", DRAFT, (8, 512)),
    ],
)
def test_generation_size_examples(aspect, box, expected):
    assert generation_size(parse_aspect(aspect), *box) == expected


def test_generation_size_refuses_a_short_side_under_one_step():
    with pytest.raises(InvalidInput) as caught:
        generation_size(AspectRatio(1, 100), 512, 512)
    message = str(caught.value)
    assert "1:100" in message
    assert "512x512" in message
    assert "8 pixels" in message


def test_generation_size_refuses_the_transposed_extreme_too():
    with pytest.raises(InvalidInput, match="100:1"):
        generation_size(AspectRatio(100, 1), 512, 512)


# ---------------------------------------------------------------------------------------------
# parse_aspect


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16:9", AspectRatio(16, 9)),
        ("16x9", AspectRatio(16, 9)),
        ("1920x1080", AspectRatio(16, 9)),
        (" 4:3 ", AspectRatio(4, 3)),
        ("2.39:1", AspectRatio(239, 100)),
        ("9:16", AspectRatio(9, 16)),
        ("32:18", AspectRatio(16, 9)),
    ],
)
def test_parse_aspect_accepts_and_reduces(text, expected):
    parsed = parse_aspect(text)
    assert parsed == expected
    assert (parsed.width, parsed.height) == (expected.width, expected.height)
    assert gcd(parsed.width, parsed.height) == 1


def test_parse_aspect_str_round_trips():
    assert str(parse_aspect("2.39:1")) == "239:100"
    assert parse_aspect(str(parse_aspect("1920x1080"))) == AspectRatio(16, 9)


@pytest.mark.parametrize(
    ("text", "label"),
    [("16:9", "16:9"), ("9:16", "9:16"), ("21:9", "7:3"), ("2.39:1", "2.39:1"), ("1:2.39", "1:2.39"),
     ("1.85:1", "1.85:1"), ("64:27", "64:27"), ("1000:999", "1000:999"), ("40:1", "40:1"), ("1920x800", "12:5")],
)
def test_an_aspect_label_is_written_as_people_write_it(text, label):
    assert parse_aspect(text).label == label


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "W:H"),
        ("16", "W:H"),
        ("16:9:1", "W:H"),
        ("a:b", "W:H"),
        ("nan:1", "W:H"),
        ("inf:1", "W:H"),
        ("0:9", "positive"),
        ("-16:9", "positive"),
        ("1:0", "positive"),
        ("1.00001:1", "too fine-grained"),
    ],
)
def test_parse_aspect_rejects_with_an_informative_message(text, hint):
    with pytest.raises(InvalidInput) as caught:
        parse_aspect(text)
    message = str(caught.value)
    assert repr(text) in message, message  # names the offending text
    assert hint in message, message  # and says what is wrong with it


def test_parse_aspect_too_fine_grained_names_the_limit():
    with pytest.raises(InvalidInput, match="10000"):
        parse_aspect("1.00001:1")


# ---------------------------------------------------------------------------------------------
# AspectRatio


def test_aspect_ratio_refuses_non_lowest_terms():
    with pytest.raises(InvalidInput) as caught:
        AspectRatio(32, 18)
    assert "32:18" in str(caught.value)
    assert "lowest terms" in str(caught.value)


@pytest.mark.parametrize(("width", "height"), [(0, 1), (1, 0), (-16, 9), (16, -9), (0, 0)])
def test_aspect_ratio_refuses_non_positive_terms(width, height):
    with pytest.raises(InvalidInput) as caught:
        AspectRatio(width, height)
    assert f"{width}:{height}" in str(caught.value)
    assert "positive" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def aspects(draw):
    a = draw(st.integers(min_value=1, max_value=50))
    b = draw(st.integers(min_value=1, max_value=50))
    g = gcd(a, b)
    return AspectRatio(a // g, b // g)


box_sides = st.integers(min_value=64 // SIZE_STEP, max_value=8192 // SIZE_STEP).map(lambda k: k * SIZE_STEP)
box_growth = st.integers(min_value=0, max_value=8192 // SIZE_STEP).map(lambda k: k * SIZE_STEP)


def _size_or_skip(aspect, box_width, box_height):
    try:
        return generation_size(aspect, box_width, box_height)
    except InvalidInput:
        assume(False)
        raise  # unreachable: assume(False) aborts the example


property_settings = settings(max_examples=300, deadline=None)


@property_settings
@given(aspects(), box_sides, box_sides)
def test_output_fits_inside_the_box(aspect, box_width, box_height):
    width, height = _size_or_skip(aspect, box_width, box_height)
    assert width <= box_width
    assert height <= box_height


@property_settings
@given(aspects(), box_sides, box_sides)
def test_output_sides_are_positive_multiples_of_the_step(aspect, box_width, box_height):
    width, height = _size_or_skip(aspect, box_width, box_height)
    assert width > 0 and height > 0
    assert width % SIZE_STEP == 0
    assert height % SIZE_STEP == 0


@property_settings
@given(aspects(), box_sides, box_sides)
def test_each_side_is_within_one_step_of_the_exact_aspect_rectangle(aspect, box_width, box_height):
    width, height = _size_or_skip(aspect, box_width, box_height)
    scale = min(Fraction(box_width, aspect.width), Fraction(box_height, aspect.height))
    exact_width, exact_height = aspect.width * scale, aspect.height * scale
    assert 0 <= exact_width - width < SIZE_STEP
    assert 0 <= exact_height - height < SIZE_STEP
    # The exact rectangle touches the box on at least one side.
    assert exact_width == box_width or exact_height == box_height
    # Hence the output's own ratio deviates from the aspect by less than one step per term.
    assert abs(width * aspect.height - height * aspect.width) < SIZE_STEP * max(aspect.width, aspect.height)


@property_settings
@given(aspects(), box_sides, box_sides, box_growth, box_growth)
def test_a_larger_box_never_gives_a_smaller_output(aspect, box_width, box_height, grow_width, grow_height):
    small = _size_or_skip(aspect, box_width, box_height)
    large_box = (min(box_width + grow_width, 8192), min(box_height + grow_height, 8192))
    # A box at least as large on both sides never makes the aspect "too extreme".
    large = generation_size(aspect, *large_box)
    assert large[0] >= small[0]
    assert large[1] >= small[1]


@property_settings
@given(aspects(), box_sides, box_sides, box_sides, box_sides)
def test_same_aspect_keeps_its_ratio_across_boxes(aspect, w1, h1, w2, h2):
    first = _size_or_skip(aspect, w1, h1)
    second = _size_or_skip(aspect, w2, h2)
    for width, height in (first, second):
        # width/height is within one step of a/b: |w*b - h*a| < 8*max(a, b).
        assert abs(width * aspect.height - height * aspect.width) < SIZE_STEP * max(aspect.width, aspect.height)
    # The same aspect in the same box always gives the same size.
    assert generation_size(aspect, w1, h1) == first


@pytest.mark.parametrize("text", ["1e999999999:1", "1E5:1", "0x10:9", "16:9e2"])
def test_parse_aspect_refuses_exponents_and_other_notations(text):
    with pytest.raises(InvalidInput, match="is not of the form W:H"):
        parse_aspect(text)


@property_settings
@given(st.integers(1, MAX_ASPECT_TERM), st.integers(1, MAX_ASPECT_TERM))
def test_an_aspect_label_reads_back_as_the_same_ratio(a, b):
    aspect = AspectRatio(a // gcd(a, b), b // gcd(a, b))
    assert parse_aspect(aspect.label) == aspect
