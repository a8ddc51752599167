from django.urls import path

from ocr import views

app_name = "ocr"

urlpatterns = [
    path("", views.home, name="home"),
]
