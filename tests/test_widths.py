"""Every family: one meaning of width_div (the same divisors and rounding for every family and
stage), and a checkpoint round trip."""

import pytest
import torch

from attrlib.architectures import ARCHITECTURES, create, rebuild
from attrlib.config import DistillConfig, TeacherConfig
from attrlib.engine import load_model, make_checkpoint
from attrlib.models import VGG16_WIDTHS
from attrlib.resnet import RESNET_WIDTHS
from attrlib.widths import WIDTH_DIVS, check_width_div, scale_widths


def test_scale_widths_rounds_down_to_at_least_one():
    assert scale_widths((64, 6, 3), 4) == (16, 1, 1)
    with pytest.raises(ValueError, match=r"width_div must be one of \(1, 2, 4, 8, 16, 32\), got 3"):
        scale_widths((64,), 3)
    with pytest.raises(ValueError, match="student_width_divs must be one of"):
        check_width_div(6, "student_width_divs")


@pytest.mark.parametrize(
    ("family", "full"), [("vgg16_bn", VGG16_WIDTHS), ("resnet", RESNET_WIDTHS)]
)
def test_teacher_and_student_divide_the_same_way(family, full):
    teacher = create(family, 4, num_classes=3, input_size=32)
    assert tuple(teacher.config.widths) == scale_widths(full, 4)
    student = teacher.config.scaled(8)  # a student of that teacher: its widths // 8
    assert tuple(student.widths) == scale_widths(scale_widths(full, 4), 8)


@pytest.mark.parametrize("div", WIDTH_DIVS)
def test_one_set_of_divisors_for_teachers_and_students(div):
    assert TeacherConfig(profile="smoke", width_div=div).width_div == div
    assert DistillConfig(profile="smoke", width_div=div).width_div == div
    for config in (TeacherConfig, DistillConfig):
        with pytest.raises(ValueError, match="width_div must be one of"):
            config(profile="smoke", width_div=3)


@pytest.mark.parametrize("family", ARCHITECTURES.names())
def test_every_registered_family_round_trips_through_a_checkpoint(family, tmp_path):
    """Build, save, load: the loaded network is the same family and config and computes the
    same logits; its student (widths // 2) rebuilds from the stored config too."""
    classes = ("a", "b", "c")
    model = create(family, 8, num_classes=len(classes), input_size=32).eval()
    torch.save(make_checkpoint(model, classes), tmp_path / "m.pt")
    loaded, ckpt = load_model(tmp_path / "m.pt", classes=classes)
    assert ckpt["architecture"] == family and type(loaded) is type(model)
    assert loaded.config == model.config
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    student = rebuild(family, loaded.config.scaled(2))
    assert tuple(student.config.widths) == scale_widths(model.config.widths, 2)
