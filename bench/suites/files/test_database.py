import sqlite3

import pytest


@pytest.mark.parametrize("customer", range(0, 5000, 500))
def test_orders_of_a_customer(database, customer):
    con = sqlite3.connect(database)
    rows = con.execute("select count(*), sum(qty) from orders where customer = ?", (customer,))
    count, qty = rows.fetchone()
    con.close()
    assert count > 0 and qty >= count


def test_index_is_used(database):
    con = sqlite3.connect(database)
    plan = con.execute("explain query plan select * from orders where item = 'item-3'").fetchall()
    con.close()
    assert "by_item" in str(plan)


def test_writes_stay_in_this_copy(database):
    con = sqlite3.connect(database)
    con.execute("delete from orders where customer = 1")
    con.commit()
    con.close()
