-- Captions of a list of keys ($keys), for search results.
SELECT key, caption FROM samples WHERE list_contains($keys, key) AND image_status = 'ok';
