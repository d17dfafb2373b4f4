"""Bad tables, settings files and run files (CSV, JSON, YAML a user or a damaged run hands to
nucseg): each is one InputError naming the file, or at the command line one
`error: <file>: <problem>` line, with no traceback and no partial output."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from nucseg.cli.common import friendly_errors
from nucseg.compare import read_score_table
from nucseg.data.dataset import read_class_table
from nucseg.data.folds import organ_folds
from nucseg.io import InputError, write_labels
from nucseg.mrcnn.config import Config
from nucseg.scoring import keep_confident, organ_table

from test_bad_inputs import _member, assert_one_error, error_lines, invoke


def two_nuclei():
    labels = np.zeros((32, 32), np.uint16)
    labels[2:10, 2:10], labels[20:28, 20:28] = 1, 2
    return labels


# --- CSV tables: one reader (nucseg.io.read_csv_table) -------------------------------------
@pytest.mark.parametrize("reader, header, row", [
    (lambda p: keep_confident(two_nuclei(), p, 0.5), "id,score", "5"),
    (read_class_table, "image,label,class_id", "img,3"),
    (organ_table, "id,organ", ",kidney"),
    (lambda p: organ_folds(p, ["a"]), "id,organ", ",liver"),
])
def test_a_row_with_missing_fields_names_the_file_and_line(tmp_path, reader, header, row):
    path = tmp_path / "table.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(InputError, match=r"table\.csv: line 2: no value for"):
        reader(path)


def test_tables_that_are_not_utf8_or_lack_columns_are_input_errors(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,organ\ncaf\xe9,kidney\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin.csv: cannot read metadata CSV"):
        organ_table(latin)
    columns = tmp_path / "columns.csv"
    columns.write_text("image,label\nimg,1\n")
    with pytest.raises(InputError, match="needs the column.s. class_id; found image, label"):
        read_class_table(columns)


def test_metadata_with_a_byte_order_mark_works_for_folds_as_for_scoring(tmp_path):
    path = tmp_path / "metadata.csv"
    path.write_bytes("\ufeffid,organ\na,Kidney\nb,liver\n".encode("utf-8"))
    assert organ_table(path) == {"a": "kidney", "b": "liver"}
    folds = organ_folds(path, ["a", "b"])
    assert {held for _, _, held in folds for held in held} == {"a", "b"}


@pytest.mark.parametrize("text", ['{"per_image": {"a": 1}}', '{"per_image": [1]}',
                                  '{"per_image": [{"image": "a", "aji": 0.5}, {"aji": 0.4}]}'])
def test_compare_refuses_score_json_of_the_wrong_shape(tmp_path, text):
    path = tmp_path / "scores.json"
    path.write_text(text)
    with pytest.raises(InputError, match="scores.json: "):
        read_score_table(path)


# --- settings and run files -----------------------------------------------------------------
@pytest.mark.parametrize("setting", [{"MASK_SHAPE": 28}, {"MINI_MASK_SHAPE": 56},
                                     {"IMAGE_MIN_SCALE": "0"}])
def test_a_config_value_of_the_wrong_type_is_an_input_error(tmp_path, setting):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"preset": "paper", **setting}))
    with pytest.raises(InputError, match="config.yaml: "):
        Config.from_yaml(path)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes("NAME: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="config.yaml: not valid YAML .UnicodeDecodeError"):
        Config.from_yaml(path)


@pytest.mark.parametrize("text", ["[1, 2]\n", "epochs: [1\n", "no_such_setting: 3\n",
                                  "dataset: [1]\n"])
def test_resume_of_a_run_with_a_damaged_train_yaml_names_it(tmp_path, text):
    from nucseg.train import TrainOptions, train_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"preset": "paper"}))
    (run / "train.yaml").write_text(text)
    with pytest.raises(InputError, match="train.yaml: "):
        train_run(None, None, run, TrainOptions(), resume=True, log=lambda *a: None)


def test_a_loss_that_became_nan_is_one_error_line(capsys):
    @friendly_errors
    def diverging():
        raise FloatingPointError("runs/x: loss became nan at epoch 1, step 3; lower the "
                                 "learning rate")

    with pytest.raises(SystemExit) as stop:
        diverging()
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: runs/x: loss became nan at epoch 1, step 3; lower the learning rate"]


# --- batches --------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["distance", "labels"], ["multitask", "targets"]])
def test_label_maps_whose_outputs_share_a_name_are_refused(tmp_path, command):
    write_labels(tmp_path / "in" / "x.png", two_nuclei())
    write_labels(tmp_path / "in" / "x_labels.png", two_nuclei())
    result = invoke(*command, tmp_path / "in", "-o", tmp_path / "out")
    assert_one_error(result, tmp_path / "in" / "x_labels.png", 2, "same stem as")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("x_*"))


def test_a_folder_in_the_way_of_one_output_does_not_stop_the_batch(tmp_path):
    for name in ("a", "b"):
        write_labels(tmp_path / "in" / f"{name}.png", two_nuclei())
    (tmp_path / "out" / "a_dist.tif").mkdir(parents=True)       # a folder where a file goes
    result = invoke("distance", "labels", tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code != 0
    errors = error_lines(result)
    assert any("a_dist" in line for line in errors), result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "out" / "b_dist.tif").is_file()


def test_members_of_one_image_made_on_different_sizes_are_reported_and_the_rest_merged(
        tmp_path):
    good = _member(tmp_path, "good")
    first = _member(tmp_path, "pair")
    second = _member(tmp_path / "other", "pair", image_shape=np.array([48, 48], np.int64))
    second = second.rename(tmp_path / "members" / "pair_member01.npz")
    result = invoke("merge", good, first, second, "-o", tmp_path / "out", "--min-area", "1")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = error_lines(result)
    assert any(line.startswith(f"error: {second}: member made on a 48x48 image")
               for line in errors), result.output
    assert (tmp_path / "out" / "good_labels.tif").is_file()
    assert not list((tmp_path / "out").glob("pair*"))
