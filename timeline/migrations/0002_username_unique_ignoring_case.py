"""Usernames are unique whatever their case ("Alice" and "alice" are one name).

Django's User model cannot carry the constraint itself, so the index is made here, in SQL that
SQLite and PostgreSQL share. Signup checks first (timeline.services.validate_username); this
index closes the race between two signups with the same name at once.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("timeline", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE UNIQUE INDEX auth_user_username_lower_uniq ON auth_user (lower(username));",
            reverse_sql="DROP INDEX auth_user_username_lower_uniq;",
        ),
    ]
