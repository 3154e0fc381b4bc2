from rest_framework import pagination


class CursorPagination(pagination.CursorPagination):
    """Stable cursors over a unique, time-ordered column."""

    ordering = "-id"
    page_size_query_param = "limit"
    max_page_size = 200
