-- lockdown: run on every catalog connection before anything else reads through it.
-- Policy files and `clipsieve query` are SQL from outside the project, and they share
-- the catalog's connection, so the connection itself may read the lake and nothing else:
-- no other files (read_csv('/etc/passwd'), glob, ATTACH, COPY ... TO), no extension
-- installs or loads, no Python variables as tables, and no setting can be changed back.
-- {{allowed}} is the list of folders that may be read: the lake root, or nothing.
-- Resource limits come first (they cannot be changed once the configuration is locked),
-- and the temp directory is always set: DuckDB may read its temp directory whatever
-- allowed_directories says, and its default is `<cwd>/.tmp`. {{temp_directory}} is a
-- private folder made for this connection, or '' (no spilling).
-- Statement types (SELECT only) are checked separately: see resources/catalog.py.
SET memory_limit = {{memory_limit}};
SET max_temp_directory_size = {{max_temp_directory_size}};
SET temp_directory = {{temp_directory}};
SET python_enable_replacements = false;
SET autoinstall_known_extensions = false;
SET autoload_known_extensions = false;
SET allow_community_extensions = false;
SET allowed_directories = {{allowed}};
SET enable_external_access = false;
SET lock_configuration = true;
