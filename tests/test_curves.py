"""reptile_tf.curves: which accuracy a learning curve shows."""

from reptile_tf.curves import curve_points, moving_average


def test_maml_curves_show_the_query_accuracy_after_adaptation_not_the_chance_level_before():
    metrics = [{"iteration": 100, "accuracy": 20.0, "query_accuracy": 50.0},
               {"iteration": 200, "accuracy": 19.5, "query_accuracy": 70.0, "val_accuracy": 90.0}]
    assert curve_points(metrics) == ("query_accuracy", [(100, 50.0), (200, 70.0)], [(200, 90.0)])


def test_reptile_curves_show_the_accuracy_it_logs():
    metrics = [{"iteration": 100, "accuracy": 60.0}, {"iteration": 200, "accuracy": 65.0}]
    assert curve_points(metrics) == ("accuracy", [(100, 60.0), (200, 65.0)], [])


def test_a_run_without_accuracies_has_no_curve():
    assert curve_points([{"iteration": 100, "val_mse": 0.5}]) == (None, [], [])


def test_moving_average_shrinks_its_window_at_the_start():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
