"""The participants' effects are written once with asyncpg's `$n` parameters and run on psycopg in a prepared
transaction: the translation keeps every parameter in its place, a repeated one included."""

from services.runtime.prepared import _for_psycopg


def test_each_placeholder_takes_its_own_argument_in_order():
    text, taken = _for_psycopg("UPDATE t SET a = a - $2, b = b + $2 WHERE id = $1 AND a >= $2 RETURNING true")
    assert text == "UPDATE t SET a = a - %s, b = b + %s WHERE id = %s AND a >= %s RETURNING true"
    assert taken == (1, 1, 0, 1)


def test_a_percent_sign_is_not_taken_for_a_placeholder():
    text, taken = _for_psycopg("SELECT $1 LIKE '10%' AND $10 > 0")
    assert text == "SELECT %s LIKE '10%%' AND %s > 0"
    assert taken == (0, 9)
